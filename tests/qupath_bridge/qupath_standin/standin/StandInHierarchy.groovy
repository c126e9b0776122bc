package standin

/** Stand-in for QuPath's PathObjectHierarchy. */
class StandInHierarchy {
    final StandInPathObject root = new StandInPathObject("root", new StandInROI([type: "Polygon", coordinates: [[[0, 0]]]]))
    int changeEvents = 0

    List getAnnotationObjects() {
        List found = []
        collect(root, found)
        return found
    }

    private static void collect(StandInPathObject object, List found) {
        object.getChildObjects().each {
            if (it.isAnnotation())
                found.add(it)
            collect(it, found)
        }
    }

    void addObjects(Collection objects) {
        root.addChildObjects(objects)
        changeEvents++
    }

    void fireHierarchyChangedEvent(Object source) {
        changeEvents++
    }
}
