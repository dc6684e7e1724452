"""Where users train: Lightning and Hugging Face callbacks; TensorBoard, W&B and MLflow exporters.

Each is an optional extra (`pip install 'gradwatch[lightning]'`, ...), imported only when used:
`from gradwatch.integrations.lightning import GradwatchCallback`.
"""
