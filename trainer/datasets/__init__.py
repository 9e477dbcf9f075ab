"""Data sets: ImageFolder reading with a corrupt-image policy, transforms, synthetic PCB sets."""
