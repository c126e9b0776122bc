package standin

import groovy.json.JsonSlurper

/**
 * What the stand-in QuPath shows: images (each with a file, annotations and a
 * hierarchy), the open image, the selection and the project.
 */
class Scene {
    static Scene current

    List<StandInImageData> images = []
    int open = 0
    List selected = []
    StandInProject project

    static Scene load(File file) {
        Map raw = new JsonSlurper().parse(file, "UTF-8")
        Scene scene = new Scene()
        raw.images.each { Map image ->
            def data = new StandInImageData(String.valueOf(image.id), image.name, image.path)
            (image.annotations ?: []).each { Map annotation ->
                Map plane = annotation.geometry.plane ?: [:]
                def object = new StandInPathObject("annotation",
                        new StandInROI(annotation.geometry, (plane.z ?: 0) as int, (plane.t ?: 0) as int))
                object.name = annotation.name
                data.hierarchy.root.addChildObjects([object])
                if (annotation.selected)
                    scene.selected.add(object)
            }
            scene.images.add(data)
        }
        scene.open = (raw.open ?: 0) as int
        if (raw.project)
            scene.project = new StandInProject(scene.images)
        current = scene
        return scene
    }

    def currentImageData() {
        return open < 0 ? null : images[open]
    }

    List selectedObjects() {
        return selected
    }

    Map describe() {
        return [images: images.collect { it.describe() }]
    }
}
