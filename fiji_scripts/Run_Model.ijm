// Plugins > OncoAI > Run Model
//
// Runs any model in the OncoAI cache on the current image.  A dialog lists the
// models and asks what to open: objects (label image, ROI Manager, Results
// table) or the model's output image.
//
// From your own macro, with the options of oncoai-core.txt:
//   runMacro(getDirectory("plugins") + "OncoAI/Run_Model.ijm",
//       "input=[/data/a.tif] model=oncoai-nuclei kind=objects output=[/data/oncoai]");
// The last line printed to the Log is OK, or ERROR: <what went wrong>.

here = File.getParent(getInfo("macro.filepath")) + File.separator;
given = getArgument();
interactive = "false";
if (given == "" && !is("Batch Mode"))
    interactive = "true";
answer = runMacro(here + "oncoai-core.txt", given + " action=run askkind=true title=[OncoAI: run a model] show=" + interactive
    + " interactive=" + interactive + " here=[" + here + "]");
// runMacro answers "[aborted]" when the called macro stopped on an error.
if (!startsWith(answer, "OK") && !startsWith(answer, "ERROR:"))
    print("ERROR: the OncoAI macro stopped (" + answer + ")");
