"""VQA data: the sources prepare_data reads and the official VQAv2 accuracy metric."""
