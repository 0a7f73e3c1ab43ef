"""The real-model steps: capture from a teacher, distillation, judging on the model, the demo model."""
