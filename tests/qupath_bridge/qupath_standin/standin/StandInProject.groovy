package standin

/** Stand-in for a QuPath Project and its image entries. */
class StandInProject {
    final List entries

    StandInProject(List<StandInImageData> images) {
        entries = images.collect { new Entry(it) }
    }

    List getImageList() { return entries }

    static class Entry {
        final StandInImageData data

        Entry(StandInImageData data) { this.data = data }

        String getID() { return data.id }

        String getImageName() { return data.name }

        Collection getURIs() { return [new File(data.path).toURI()] }

        StandInImageData readImageData() { return data }

        void saveImageData(StandInImageData imageData) { imageData.saved++ }
    }
}
