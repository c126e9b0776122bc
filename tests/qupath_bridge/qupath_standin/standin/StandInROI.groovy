package standin

/** Stand-in for a QuPath ROI: a GeoJSON geometry on a z/t plane. */
class StandInROI {
    final Map geometry
    final int z
    final int t

    StandInROI(Map geometry, int z = 0, int t = 0) {
        this.geometry = new LinkedHashMap(geometry)
        this.geometry.remove("plane")
        this.z = z
        this.t = t
    }

    int getZ() { return z }

    int getT() { return t }

    boolean isArea() {
        return geometry.type in ["Polygon", "MultiPolygon"]
    }

    /** [xmin, ymin, xmax, ymax] of the outline. */
    List bounds() {
        List points = []
        flatten(geometry.coordinates, points)
        return [points.collect { it[0] }.min(), points.collect { it[1] }.min(),
                points.collect { it[0] }.max(), points.collect { it[1] }.max()]
    }

    private static void flatten(def value, List out) {
        if (value instanceof List && !value.isEmpty() && value[0] instanceof Number)
            out.add(value)
        else if (value instanceof List)
            value.each { flatten(it, out) }
    }
}
