"""AutoICE / AI4Arctic sea-ice charting, in one place (spec autoice.md).

- :mod:`iceseg.autoice.data`: the ready-to-train NetCDF reader (h5py), the 18 input channels, the
  patch sampler and whole-scene dataset, scene lists, the synthetic scene writer, the submission writer.
- :mod:`iceseg.autoice.loss`: masked MSE (SIC) + cross-entropy (SoD, FLOE) per task.
- :mod:`iceseg.autoice.evaluate`: tiled full-scene inference, R², weighted F1, the combined score,
  PNGs and the submission NetCDF (``EVALUATORS["autoice"]``).

The model is ``iceseg/models/deeplab.py``; its config family ``configs.DeepLabConfig``.
"""

from iceseg.autoice.data import (  # noqa: F401  (the reader's API, as ``iceseg.autoice.<name>``)
    AMSR2_ALL,
    CHANNELS,
    CHART_CLASSES,
    CHARTS,
    DEFAULTS,
    ERA5_VARS,
    GEO_VARS,
    LOWRES_FACTOR,
    LOWRES_VARS,
    MASK,
    SAR_VARS,
    TIE_POINTS,
    AutoICEPatches,
    AutoICEScenes,
    NetCDFWriter,
    Scene,
    build_autoice_dataset,
    make_synthetic_dataset,
    nearest_index,
    open_nc,
    read_scene_list,
    require_h5py,
    scene_file_name,
    write_submission_chart,
    write_synthetic_scene,
)
