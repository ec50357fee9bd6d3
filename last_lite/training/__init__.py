"""Training phases: one LightningModule per path (supervised, distillation, MaskCLR) on a shared base."""
