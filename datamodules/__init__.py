"""DataModules of the retrieval experiments (Decathlon Task03_Liver slices, DeepLesion lesion crops) and the
pieces they share (base class, resumable sampling, on-disk caches).

Imported lazily, so ``python -m datamodules.synthetic.deeplesion`` neither imports torch and MONAI first nor
warns that runpy finds the module already imported.
"""
from datamodules._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "base": ("RetrievalDataModule", "TransformedDataset"),
    "cache": ("cache_key", "ensure_data_root", "file_stats", "load_npz", "npz_cached", "save_npz_atomic",
              "write_phantom_atomic"),
    "chexpert": ("CheXpertDataModule", "CheXpertRow", "apply_uncertainty", "read_chexpert_csv", "read_radiograph"),
    "decathlon_liver": ("DecathlonLiverDataModule", "LiverVolume", "choose_slices", "load_nifti",
                        "read_decathlon_index", "resize_slices", "to_display"),
    "deeplesion": ("DeepLesionDataModule", "LesionRow", "lesion_crop", "read_dl_info", "read_hu_png"),
    "sampling": ("EpochSeededSampler", "ResumableDataLoader", "sample_seed"),
})
