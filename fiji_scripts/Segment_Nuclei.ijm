// Plugins > OncoAI > Segment Nuclei
//
// Finds the nuclei in the current image with OncoAI's nucleus model,
// oncoai-nuclei, and opens the label image, the objects in the ROI Manager and
// their measurements in the Results table.  A selection on the image limits the
// run to the selection's box.
//
// From your own macro, with the options of oncoai-core.txt:
//   runMacro(getDirectory("plugins") + "OncoAI/Segment_Nuclei.ijm",
//       "input=[/data/cells.tif] output=[/data/oncoai]");
// The last line printed to the Log is OK, or ERROR: <what went wrong>.

here = File.getParent(getInfo("macro.filepath")) + File.separator;
given = getArgument();
interactive = "false";
if (given == "" && !is("Batch Mode"))
    interactive = "true";
answer = runMacro(here + "oncoai-core.txt", given + " action=run kind=objects model=oncoai-nuclei show=" + interactive
    + " interactive=" + interactive + " here=[" + here + "]");
// runMacro answers "[aborted]" when the called macro stopped on an error.
if (!startsWith(answer, "OK") && !startsWith(answer, "ERROR:"))
    print("ERROR: the OncoAI macro stopped (" + answer + ")");
