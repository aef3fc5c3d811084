"""Data: TFDS builders that need no TensorFlow (array_record), grain pipelines and
registered preprocessing ops."""
