package standin

/** Stand-in for a QuPath PathObject: type, ROI, class, measurements, children. */
class StandInPathObject {
    final String type
    final StandInROI roi
    String className
    String name
    Map measurements = [:]
    boolean hasNucleus
    boolean locked
    StandInPathObject parent
    private final List children = []

    StandInPathObject(String type, StandInROI roi) {
        this.type = type
        this.roi = roi
    }

    StandInROI getROI() { return roi }

    boolean isAnnotation() { return type == "annotation" }

    // QuPath's cells and tiles are detections too.
    boolean isDetection() { return type in ["detection", "cell", "tile"] }

    Collection getChildObjects() { return Collections.unmodifiableList(children) }

    void addChildObjects(Collection objects) {
        objects.each { StandInPathObject child ->
            if (child.parent != null)
                child.parent.children.remove(child)
            child.parent = this
            children.add(child)
        }
    }

    void removeChildObjects(Collection objects) {
        objects.each { StandInPathObject child ->
            if (children.remove(child))
                child.parent = null
        }
    }

    void setLocked(boolean value) { locked = value }

    Map describe() {
        return [type        : type, class: className, name: name, locked: locked,
                z           : roi.z, t: roi.t, bounds: roi.bounds(), nucleus: hasNucleus,
                measurements: measurements, children: children.collect { it.describe() }]
    }
}
