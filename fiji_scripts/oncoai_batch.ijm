// Plugins > OncoAI > oncoai batch
//
// Runs a model on one image file, or on every image in a folder, and writes
// for each image <name>_labels.tif, <name>_RoiSet.zip and <name>_results.csv
// into the output folder (with kind=image suffix=S: <name>_S.tif instead).
//
// Headless, with Debian's ImageJ (xvfb-run because ImageJ's run() needs a display):
//   xvfb-run -a java -jar /usr/share/java/ij.jar -batch oncoai_batch.ijm \
//       "input=IN model=MODEL output=OUTDIR"
// With Fiji:
//   ImageJ-linux64 --headless -batch oncoai_batch.ijm "input=IN model=MODEL output=OUTDIR"
// From your own macro:
//   runMacro(getDirectory("plugins") + "OncoAI/oncoai_batch.ijm",
//       "input=[/data/in] model=oncoai-nuclei output=[/data/out] params=[threshold=0.4]");
// Further options are those of oncoai-core.txt (kind, suffix, params, timeout).
//
// One line per image says "done <file>" or "failed <file>: <reason>"; the last
// line is OK when every image worked, or ERROR: <how many failed, first reason>.

// Globals: the functions below read them.
var here = "";
var core = "";
var given = "";

here = File.getParent(getInfo("macro.filepath")) + File.separator;
core = here + "oncoai-core.txt";
given = getArgument();
if (given == "" && !is("Batch Mode"))
    given = askOptions();

input = call("ij.Macro.getValue", given, "input", "");
verdict = "OK";
if (given == "") {
    verdict = "ERROR: cancelled";
} else if (input == "") {
    verdict = "ERROR: no input given; pass input=FILE or input=FOLDER";
} else if (File.isDirectory(input)) {
    verdict = runFolder(input);
} else {
    answer = runOne(input);
    if (!startsWith(answer, "OK"))
        verdict = answer;
}
print(verdict);


function runOne(path) {
    answer = runMacro(core, "input=[" + path + "] " + given
        + " action=run show=false report=false interactive=false here=[" + here + "]");
    // runMacro answers "[aborted]" when the called macro stopped on an error.
    if (!startsWith(answer, "OK") && !startsWith(answer, "ERROR:"))
        answer = "ERROR: the OncoAI macro stopped (" + answer + ")";
    return answer;
}

function isImage(name) {
    lower = toLowerCase(name);
    // Earlier OncoAI outputs in the same folder are not inputs.
    if (endsWith(lower, "_labels.tif") || endsWith(lower, "_denoised.tif")
        || endsWith(lower, "_superres.tif") || endsWith(lower, "_prediction.tif"))
        return false;
    extensions = newArray(".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp");
    for (i = 0; i < extensions.length; i++)
        if (endsWith(lower, extensions[i]))
            return true;
    return false;
}

function runFolder(folder) {
    if (!endsWith(folder, File.separator) && !endsWith(folder, "/"))
        folder = folder + File.separator;
    files = getFileList(folder);
    total = 0;
    failed = 0;
    first = "";
    for (i = 0; i < files.length; i++) {
        image = isImage(files[i]);
        if (!image)
            continue;
        total++;
        answer = runOne(folder + files[i]);
        if (startsWith(answer, "OK")) {
            print("done " + files[i]);
        } else {
            failed++;
            print("failed " + files[i] + ": " + substring(answer, 7));
            if (first == "")
                first = substring(answer, 7);
        }
    }
    if (total == 0)
        return "ERROR: no images (.tif, .png, .jpg, .bmp) in " + folder;
    if (failed > 0)
        return "ERROR: " + failed + " of " + total + " images failed; the first: " + first;
    return "OK";
}

function askOptions() {
    listing = runMacro(core, "action=models report=false here=[" + here + "]");
    if (!startsWith(listing, "OK")) {
        showMessage("OncoAI", substring(listing, 7));
        return "";
    }
    lines = split(listing, "\n");
    if (lines.length < 2) {
        showMessage("OncoAI", "No models in the OncoAI cache; add one with `oncoai models import PATH`.");
        return "";
    }
    ids = Array.slice(lines, 1);
    for (i = 0; i < ids.length; i++) {
        parts = split(ids[i], "\t");
        ids[i] = parts[0];
    }
    Dialog.create("OncoAI: run a model on a folder");
    Dialog.addDirectory("Input folder:", "");
    Dialog.addChoice("Model:", ids, ids[0]);
    Dialog.addChoice("Write:", newArray("objects", "image"), "objects");
    Dialog.addString("Parameters:", "", 30);
    Dialog.addDirectory("Output folder:", "");
    Dialog.show();
    input = Dialog.getString();
    model = Dialog.getChoice();
    kind = Dialog.getChoice();
    params = Dialog.getString();
    output = Dialog.getString();
    return "input=[" + input + "] model=[" + model + "] kind=" + kind
        + " params=[" + params + "] output=[" + output + "]";
}
