package qupath.lib.gui.scripting

import standin.Scene

/** Stand-in for QuPath's QPEx: the static calls OncoAI's scripts use. */
class QPEx {
    static def getCurrentImageData() {
        return Scene.current.currentImageData()
    }

    static List getSelectedObjects() {
        return Scene.current.selectedObjects()
    }

    static def getProject() {
        return Scene.current.project
    }
}
