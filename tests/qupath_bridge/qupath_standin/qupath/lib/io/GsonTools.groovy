package qupath.lib.io

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import standin.StandInROI

/**
 * Stand-in for QuPath's GsonTools.  Like Gson it writes maps, lists, numbers and
 * strings, and a ROI as its GeoJSON geometry; it reads JSON numbers as Double.
 * Gson would write a Groovy GString as an object of its fields, so this
 * stand-in refuses GStrings instead of hiding the mistake.
 */
class GsonTools {
    static final GsonTools INSTANCE = new GsonTools()

    static GsonTools getInstance() {
        return INSTANCE
    }

    String toJson(Object value) {
        return JsonOutput.toJson(plain(value))
    }

    Object fromJson(String text, Class cls) {
        return doubles(new JsonSlurper().parseText(text))
    }

    private static Object plain(Object value) {
        if (value instanceof GString)
            throw new IllegalArgumentException("GString passed to Gson: " + value)
        if (value instanceof StandInROI)
            return plain(((StandInROI) value).geometry)
        if (value instanceof Map) {
            Map out = new LinkedHashMap()
            value.each { k, v -> out.put(plain(k), plain(v)) }
            return out
        }
        if (value instanceof Collection)
            return value.collect { plain(it) }
        return value
    }

    private static Object doubles(Object value) {
        if (value instanceof Number)
            return ((Number) value).doubleValue()
        if (value instanceof Map) {
            Map out = new LinkedHashMap()
            value.each { k, v -> out.put(k, doubles(v)) }
            return out
        }
        if (value instanceof List)
            return value.collect { doubles(it) }
        return value
    }
}
