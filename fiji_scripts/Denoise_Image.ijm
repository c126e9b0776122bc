// Plugins > OncoAI > Denoise Image
//
// Denoises the current image with a model from the OncoAI cache (e.g. a
// Noise2Void or CARE model), chosen in a dialog, and opens the result,
// <name>_denoised.tif, with the image's calibration.
//
// From your own macro, with the options of oncoai-core.txt:
//   runMacro(getDirectory("plugins") + "OncoAI/Denoise_Image.ijm",
//       "input=[/data/noisy.tif] model=my-n2v-model output=[/data/oncoai]");
// The last line printed to the Log is OK, or ERROR: <what went wrong>.

here = File.getParent(getInfo("macro.filepath")) + File.separator;
given = getArgument();
interactive = "false";
if (given == "" && !is("Batch Mode"))
    interactive = "true";
answer = runMacro(here + "oncoai-core.txt", given + " action=run kind=image suffix=denoised task=noise title=[OncoAI: denoise] show=" + interactive
    + " interactive=" + interactive + " here=[" + here + "]");
// runMacro answers "[aborted]" when the called macro stopped on an error.
if (!startsWith(answer, "OK") && !startsWith(answer, "ERROR:"))
    print("ERROR: the OncoAI macro stopped (" + answer + ")");
