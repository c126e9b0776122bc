/*
 * OncoAI: import the GeoJSON files written by `oncoai qupath run` into the open
 * QuPath project.
 *
 * Targets QuPath 0.5 and 0.6 (Java 17/21, Groovy 4); it also runs under Groovy
 * 2.4 and later, so it uses no newer Groovy syntax.
 *
 * `oncoai qupath run` writes a copy of this script beside its GeoJSON files with
 * RESULTS filled in: project entry id -> GeoJSON file.  Open the project in
 * QuPath, close the image in the viewer, and run that copy once from the Script
 * editor (not with "Run for project").  Each image gets one annotation per
 * region the model ran on, holding its objects; each image is saved.
 */

import static qupath.lib.gui.scripting.QPEx.*

import java.nio.file.Paths

import qupath.lib.io.PathIO

// Filled in by `oncoai qupath run`: entry id -> GeoJSON file.
def RESULTS = [:]

def project = getProject()
if (project == null)
    throw new IllegalStateException("OncoAI: open the project the results belong to first")
if (RESULTS.isEmpty())
    throw new IllegalStateException("OncoAI: no results listed; run the copy written by `oncoai qupath run`")

int imported = 0
int missing = 0
project.getImageList().each { entry ->
    String file = RESULTS.get(String.valueOf(entry.getID()))
    if (file == null) {
        println("OncoAI: no results for " + entry.getImageName())
        return
    }
    if (!new File(file).isFile()) {
        println("OncoAI: results file not found for " + entry.getImageName() + ": " + file)
        missing++
        return
    }
    def imageData = entry.readImageData()
    List objects = PathIO.readObjects(Paths.get(file))
    imageData.getHierarchy().addObjects(objects)
    entry.saveImageData(imageData)
    int count = 0
    objects.each { count += 1 + it.getChildObjects().size() }
    println("OncoAI: " + entry.getImageName() + ": " + count + " objects imported from " + file)
    imported++
}
println("OncoAI: imported results for " + imported + " image(s); " + missing + " file(s) missing")
