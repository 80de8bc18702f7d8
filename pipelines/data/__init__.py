"""The data layer: sources, guarded decoding, class imbalance, multi-view augmentation."""
