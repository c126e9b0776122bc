package standin

/** Stand-in for QuPath's ImageData with its ImageServer. */
class StandInImageData {
    final String id
    final String name
    final String path
    final StandInHierarchy hierarchy = new StandInHierarchy()
    int saved = 0

    StandInImageData(String id, String name, String path) {
        this.id = id
        this.name = name
        this.path = path
    }

    StandInHierarchy getHierarchy() { return hierarchy }

    def getServer() {
        // The server's only call the scripts make: getURIs().
        return [getURIs: { -> [new File(path).toURI()] }]
    }

    Map describe() {
        return [id: id, name: name, saved: saved, changeEvents: hierarchy.changeEvents,
                objects: hierarchy.root.getChildObjects().collect { it.describe() }]
    }
}
