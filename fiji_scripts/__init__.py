"""OncoAI for Fiji and ImageJ: macros, their installer, and ImageJ file formats.

- ``*.ijm`` and ``oncoai-core.txt``: the macros of *Plugins › OncoAI*;
- :mod:`fiji_scripts.install`: ``oncoai fiji install`` / ``uninstall``;
- :mod:`fiji_scripts.runner`: ``oncoai fiji run``, what the macros call, through
  the warm service when it is up;
- :mod:`fiji_scripts.writers`: RoiSet ``.zip``, results ``.csv`` and
  ``_labels.tif`` outputs;
- :mod:`fiji_scripts.ijroi`: ImageJ ``.roi`` files and RoiSets read as regions
  and annotations;
- :mod:`fiji_scripts.imagej`: open results in an ImageJ inside Python (JPype).

See the Fiji section of the README.
"""
