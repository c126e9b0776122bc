/*
 * Runs an OncoAI QuPath script against the QuPath stand-in.
 *
 * Usage: groovy -cp <compiled stand-in> RunWithStandIn.groovy SCENE.json OUT.json SCRIPT.groovy
 *
 * Writes the hierarchy after the script, or {"error": ...} when it throws.
 */
import groovy.json.JsonOutput
import standin.Scene

def scene = Scene.load(new File(args[0]))
def out = new File(args[1])
def shell = new GroovyShell(this.class.classLoader)
try {
    shell.evaluate(new File(args[2]))
    out.setText(JsonOutput.toJson(scene.describe()), "UTF-8")
} catch (Throwable e) {
    out.setText(JsonOutput.toJson([error: e.getMessage(), type: e.getClass().getName()]), "UTF-8")
    System.err.println("script failed: " + e)
    System.exit(1)
}
