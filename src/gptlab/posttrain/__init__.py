"""After pretraining: chat template, instruction and preference data, fine-tuning and DPO."""
