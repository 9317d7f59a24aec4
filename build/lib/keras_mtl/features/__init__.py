"""The audio front end: log-mel features, SpecAugment-style masking, the feature cache."""
