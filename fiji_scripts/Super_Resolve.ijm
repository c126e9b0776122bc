// Plugins > OncoAI > Super Resolve
//
// Runs a super-resolution model from the OncoAI cache, chosen in a dialog, on
// the current image and opens the result, <name>_superres.tif, whose pixel
// size is the input's divided by the model's scale.
//
// From your own macro, with the options of oncoai-core.txt:
//   runMacro(getDirectory("plugins") + "OncoAI/Super_Resolve.ijm",
//       "input=[/data/small.tif] model=my-sr-model output=[/data/oncoai]");
// The last line printed to the Log is OK, or ERROR: <what went wrong>.

here = File.getParent(getInfo("macro.filepath")) + File.separator;
given = getArgument();
interactive = "false";
if (given == "" && !is("Batch Mode"))
    interactive = "true";
answer = runMacro(here + "oncoai-core.txt", given + " action=run kind=image suffix=superres task=super title=[OncoAI: super-resolve] show=" + interactive
    + " interactive=" + interactive + " here=[" + here + "]");
// runMacro answers "[aborted]" when the called macro stopped on an error.
if (!startsWith(answer, "OK") && !startsWith(answer, "ERROR:"))
    print("ERROR: the OncoAI macro stopped (" + answer + ")");
