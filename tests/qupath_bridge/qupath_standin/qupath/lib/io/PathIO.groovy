package qupath.lib.io

import groovy.json.JsonSlurper
import java.nio.file.Path
import standin.StandInPathObject
import standin.StandInROI

/**
 * Stand-in for QuPath's PathIO.readObjects: reads a Feature, a
 * FeatureCollection, an array of features or a bare geometry, with nested
 * childObjects.  A feature without objectType becomes an annotation, and a
 * classification object without a color fails, as in QuPath.
 */
class PathIO {
    static final Map TYPES = [
        annotation: "annotation", detection: "detection", cell: "cell", tile: "tile",
        tmaCore: "tmaCore", PathAnnotationObject: "annotation",
        PathDetectionObject: "detection", PathCellObject: "cell", PathTileObject: "tile",
    ]

    static List readObjects(Path path) {
        String name = path.getFileName().toString().toLowerCase()
        if (!name.endsWith(".geojson") && !name.endsWith(".json"))
            return []
        def document = new JsonSlurper().parse(path.toFile(), "UTF-8")
        List features
        if (document instanceof List)
            features = document
        else if (document.type == "FeatureCollection")
            features = document.features
        else if (document.type == "Feature")
            features = [document]
        else
            features = [[type: "Feature", geometry: document, properties: [:]]]
        return features.collect { toObject(it) }
    }

    static StandInPathObject toObject(Map feature) {
        Map props = feature.properties ?: [:]
        def raw = props.objectType ?: props.object_type ?: props.type
        String type = raw == null ? "annotation" : (TYPES[raw] ?: "annotation")
        def classification = props.classification
        String className = null
        if (classification instanceof Map) {
            if ((classification.name || classification.names) && classification.color == null)
                throw new IllegalArgumentException("JsonParseException: classification without color")
            className = classification.names ? classification.names.join(": ") : classification.name
        } else if (classification != null) {
            className = String.valueOf(classification)
        }
        Map plane = feature.geometry.plane ?: [:]
        def object = new StandInPathObject(type,
                new StandInROI(feature.geometry, (plane.z ?: 0) as int, (plane.t ?: 0) as int))
        object.className = className
        object.measurements = (props.measurements ?: [:]) as Map
        object.hasNucleus = feature.nucleusGeometry != null
        object.name = props.name
        List children = (props.childObjects ?: props.children ?: []) as List
        object.addChildObjects(children.collect { toObject(it) })
        return object
    }
}
