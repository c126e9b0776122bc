/*
 * OncoAI: detect nuclei (or cells) in the selected annotations.
 *
 * Targets QuPath 0.5 and 0.6 (Java 17/21, Groovy 4); it also runs under Groovy
 * 2.4 and later, so it uses no newer Groovy syntax.
 *
 * Before running:
 *   1. start the OncoAI service in a terminal:  oncoai serve
 *   2. open an image in QuPath and select one or more annotations.
 * Then run this script from the Script editor (Run) or Automate > User scripts.
 *
 * For each selected annotation the script sends the image's file path and the
 * annotation's outline to the service, logs the progress, and adds the objects
 * it gets back as children of the annotation, with their measurements and
 * classes.  Detections made earlier inside that annotation are replaced.
 * Set CELL_EXPANSION above 0 to get cells (nucleus grown by that many pixels)
 * instead of nuclei.
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
def CHANNEL = null              // e.g. 0 or "DAPI" for a multichannel image
def CELL_EXPANSION = 0.0d       // pixels; > 0 makes cells around the nuclei
def TIMEOUT_MINUTES = 60
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

def imageData = getCurrentImageData()
if (imageData == null)
    throw new IllegalStateException("OncoAI: open an image first")
def annotations = getSelectedObjects().findAll { it.isAnnotation() && it.getROI() != null && it.getROI().isArea() }
if (annotations.isEmpty())
    throw new IllegalStateException("OncoAI: select one or more area annotations first")

def service = new OncoAIService()
String path = imagePath(imageData.getServer())
def gson = GsonTools.getInstance()
Map params = new LinkedHashMap(PARAMS)
if (CHANNEL != null)
    params.put("channel", CHANNEL)

def hierarchy = imageData.getHierarchy()
int total = 0
annotations.eachWithIndex { annotation, index ->
    String label = "annotation " + (index + 1) + "/" + annotations.size()
    def roi = annotation.getROI()
    Map geometry = gson.fromJson(gson.toJson(roi), Map.class)
    geometry.put("plane", [c: -1, z: roi.getZ(), t: roi.getT()])
    Map job = [image: path, model: MODEL, params: params, annotation: geometry]
    if (CELL_EXPANSION > 0)
        job.put("cell_expansion", CELL_EXPANSION)
    String id = service.submit(job)
    println("OncoAI " + label + ": job " + id + " sent for " + path)
    Map status = service.waitFor(id, label, TIMEOUT_MINUTES)
    if (status.get("state") != "done")
        throw new IllegalStateException("OncoAI " + label + ": " + status.get("state") + ": " + status.get("error"))

    List objects = service.readResult(id)
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
    total += found.size()
    println("OncoAI " + label + ": " + found.size() + " objects added")
}
println("OncoAI: done, " + total + " objects in " + annotations.size() + " annotation(s)")
