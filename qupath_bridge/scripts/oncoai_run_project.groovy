/*
 * OncoAI: run a model on every image of the open QuPath project.
 *
 * Targets QuPath 0.5 and 0.6 (Java 17/21, Groovy 4); it also runs under Groovy
 * 2.4 and later, so it uses no newer Groovy syntax.
 *
 * Before running:
 *   1. start the OncoAI service in a terminal:  oncoai serve
 *   2. open the project in QuPath, save your work, and close the image viewer's
 *      image (entries are opened, changed and saved by this script).
 * Then run this script once from the Script editor (Run), not with
 * "Run for project": it walks through the project itself.
 *
 * With ONLY_IN_ANNOTATIONS = true each image's area annotations are the regions
 * to run in, and the objects become their children (detections made earlier
 * inside them are replaced).  With false the model runs on each whole image and
 * its objects come in under one new annotation per image.  Each image's data is
 * saved after its objects are added, so an interrupted run keeps what is done.
 */

import static qupath.lib.gui.scripting.QPEx.*

import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.charset.StandardCharsets
import java.nio.file.Files
import java.time.Duration

import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO

// ---- settings ---------------------------------------------------------------
def MODEL = "oncoai-nuclei"     // a model id or nickname known to the service
def PARAMS = [threshold: 0.5d, min_size: 10]   // further OncoAI parameters
def CHANNEL = null              // e.g. 0 or "DAPI" for multichannel images
def CELL_EXPANSION = 0.0d       // pixels; > 0 makes cells around the nuclei
def ONLY_IN_ANNOTATIONS = true  // false: run on each whole image
def TIMEOUT_MINUTES = 240       // per image region
// -----------------------------------------------------------------------------

// ---- OncoAI service client: identical in oncoai_detect_selected.groovy and oncoai_run_project.groovy on purpose, so each script pastes alone into QuPath ----
class OncoAIService {
    final String url
    final String token
    final HttpClient http = HttpClient.newBuilder()
            .connectTimeout(Duration.ofSeconds(5)).build()
    final def gson = GsonTools.getInstance()

    OncoAIService() {
        File folder = configDir()
        File tokenFile = new File(folder, "token")
        File infoFile = new File(folder, "service.json")
        if (!tokenFile.isFile() || !infoFile.isFile())
            throw new IllegalStateException(
                "OncoAI service not running: no token in " + folder +
                ". Start it in a terminal with: oncoai serve")
        token = tokenFile.getText("UTF-8").trim()
        Map info = gson.fromJson(infoFile.getText("UTF-8"), Map.class)
        url = String.valueOf(info.get("url"))
    }

    static File configDir() {
        String env = System.getenv("ONCOAI_CONFIG_DIR")
        if (env) return new File(env)
        String home = System.getProperty("user.home")
        String os = System.getProperty("os.name").toLowerCase()
        if (os.contains("win")) {
            String local = System.getenv("LOCALAPPDATA") ?: home + "\\AppData\\Local"
            return new File(new File(local, "oncoai"), "oncoai")
        }
        if (os.contains("mac"))
            return new File(home, "Library/Application Support/oncoai")
        String xdg = System.getenv("XDG_CONFIG_HOME") ?: home + "/.config"
        return new File(xdg, "oncoai")
    }

    String call(String method, String path, String body) {
        def builder = HttpRequest.newBuilder(URI.create(url + path))
                .timeout(Duration.ofMinutes(5))
                .header("Authorization", "Bearer " + token)
                .header("Accept", "application/json")
        if (body != null)
            builder.header("Content-Type", "application/json")
                    .method(method, HttpRequest.BodyPublishers.ofString(body, StandardCharsets.UTF_8))
        else
            builder.method(method, HttpRequest.BodyPublishers.noBody())
        HttpResponse<String> response
        try {
            response = http.send(builder.build(), HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8))
        } catch (IOException e) {
            throw new IllegalStateException("OncoAI service at " + url +
                    " did not answer (" + e.getMessage() + "). Start it with: oncoai serve")
        }
        if (response.statusCode() >= 400) {
            String message = response.body()
            try {
                message = String.valueOf(gson.fromJson(response.body(), Map.class).get("error"))
            } catch (Exception ignored) {
            }
            throw new IllegalStateException("OncoAI: " + message + " (HTTP " + response.statusCode() + ")")
        }
        return response.body()
    }

    String submit(Map job) {
        Map answer = gson.fromJson(call("POST", "/jobs", gson.toJson(job)), Map.class)
        return String.valueOf(answer.get("id"))
    }

    Map waitFor(String id, String label, int timeoutMinutes) {
        long deadline = System.currentTimeMillis() + timeoutMinutes * 60000L
        String last = ""
        while (true) {
            Map status = gson.fromJson(call("GET", "/jobs/" + id, null), Map.class)
            String state = String.valueOf(status.get("state"))
            int percent = Math.round(((status.get("progress") ?: 0) as double) * 100) as int
            String line = "OncoAI " + label + ": " + state + " " + percent + "% " + status.get("message")
            if (line != last) {
                println(line)
                last = line
            }
            if (state in ["done", "failed", "cancelled"])
                return status
            if (Thread.currentThread().isInterrupted() || System.currentTimeMillis() > deadline) {
                call("DELETE", "/jobs/" + id, null)
                throw new IllegalStateException("OncoAI " + label + ": stopped waiting; the job was cancelled")
            }
            Thread.sleep(500)
        }
    }

    List readResult(String id) {
        String text = call("GET", "/jobs/" + id + "/result", null)
        def file = Files.createTempFile("oncoai-", ".geojson")
        try {
            Files.write(file, text.getBytes(StandardCharsets.UTF_8))
            return PathIO.readObjects(file)
        } finally {
            Files.deleteIfExists(file)
        }
    }
}

String imagePath(def server) {
    def uris = server.getURIs()
    if (uris == null || uris.isEmpty())
        throw new IllegalStateException("OncoAI needs an image stored in a file; this image has no URI")
    URI uri = uris.iterator().next()
    if (uri.getScheme() != "file")
        throw new IllegalStateException("OncoAI needs an image stored in a local file; this one is at " + uri)
    return new File(uri).getAbsolutePath()
}
// ---- end of the OncoAI service client ----

def project = getProject()
if (project == null)
    throw new IllegalStateException("OncoAI: open a project first")
def service = new OncoAIService()
def gson = GsonTools.getInstance()
Map params = new LinkedHashMap(PARAMS)
if (CHANNEL != null)
    params.put("channel", CHANNEL)

def entries = project.getImageList()
int done = 0
int failed = 0
entries.eachWithIndex { entry, index ->
    String label = "image " + (index + 1) + "/" + entries.size() + " (" + entry.getImageName() + ")"
    try {
        def imageData = entry.readImageData()
        String path = imagePath(imageData.getServer())
        def hierarchy = imageData.getHierarchy()
        List regions = ONLY_IN_ANNOTATIONS ?
                hierarchy.getAnnotationObjects().findAll { it.getROI() != null && it.getROI().isArea() } :
                [null]
        if (regions.isEmpty()) {
            println("OncoAI " + label + ": no area annotations, skipped")
            return
        }
        int added = 0
        regions.each { annotation ->
            Map job = [image: path, model: MODEL, params: params]
            if (annotation != null) {
                def roi = annotation.getROI()
                Map geometry = gson.fromJson(gson.toJson(roi), Map.class)
                geometry.put("plane", [c: -1, z: roi.getZ(), t: roi.getT()])
                job.put("annotation", geometry)
            }
            if (CELL_EXPANSION > 0)
                job.put("cell_expansion", CELL_EXPANSION)
            String id = service.submit(job)
            Map status = service.waitFor(id, label, TIMEOUT_MINUTES)
            if (status.get("state") != "done")
                throw new IllegalStateException(String.valueOf(status.get("state")) + ": " + status.get("error"))
            List objects = service.readResult(id)
            if (annotation == null) {
                hierarchy.addObjects(objects)
                objects.each { added += 1 + it.getChildObjects().size() }
            } else {
                List found = []
                objects.each { parent ->
                    if (parent.isAnnotation())
                        found.addAll(parent.getChildObjects())
                    else
                        found.add(parent)
                }
                def old = annotation.getChildObjects().findAll { it.isDetection() }
                if (!old.isEmpty())
                    annotation.removeChildObjects(old)
                annotation.addChildObjects(found)
                annotation.setLocked(true)
                hierarchy.fireHierarchyChangedEvent(annotation)
                added += found.size()
            }
        }
        entry.saveImageData(imageData)
        done++
        println("OncoAI " + label + ": " + added + " objects added and saved")
    } catch (InterruptedException e) {
        throw e
    } catch (Exception e) {
        failed++
        println("OncoAI " + label + ": FAILED: " + e.getMessage())
    }
}
println("OncoAI: project done: " + done + " image(s) processed, " + failed + " failed")
