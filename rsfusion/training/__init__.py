"""Training: the LightningModule, metrics and optimisation."""
