// Plugins > OncoAI > Segment Organoids
//
// Finds the organoids in the current image with a model from the OncoAI cache,
// chosen in a dialog (one whose name mentions organoids comes first), and opens
// the label image, the objects in the ROI Manager and their measurements in the
// Results table.  OncoAI ships no organoid model: import one first with
// `oncoai models import PATH`.
//
// From your own macro, with the options of oncoai-core.txt:
//   runMacro(getDirectory("plugins") + "OncoAI/Segment_Organoids.ijm",
//       "input=[/data/wells.tif] model=my-organoid-model output=[/data/oncoai]");
// The last line printed to the Log is OK, or ERROR: <what went wrong>.

here = File.getParent(getInfo("macro.filepath")) + File.separator;
given = getArgument();
interactive = "false";
if (given == "" && !is("Batch Mode"))
    interactive = "true";
answer = runMacro(here + "oncoai-core.txt", given + " action=run kind=objects task=organoid title=[OncoAI: segment organoids] show=" + interactive
    + " interactive=" + interactive + " here=[" + here + "]");
// runMacro answers "[aborted]" when the called macro stopped on an error.
if (!startsWith(answer, "OK") && !startsWith(answer, "ERROR:"))
    print("ERROR: the OncoAI macro stopped (" + answer + ")");
