"""OncoAI in QuPath: GeoJSON out and in, QuPath projects, and the local service.

- :mod:`qupath_bridge.geojson`: results as QuPath objects, and QuPath GeoJSON read
  back as regions to run in or objects to compare;
- :mod:`qupath_bridge.project`: ``project.qpproj`` read without QuPath, and
  ``oncoai qupath run``;
- :mod:`qupath_bridge.service`: ``oncoai serve``, the local HTTP service;
- :mod:`qupath_bridge.client`: a standard-library client of that service;
- ``scripts/``: Groovy scripts for QuPath 0.5 and 0.6 that call the service.
"""
