"""The datasets' file formats, readable and writable without TensorFlow or jax.

LLAMAS label json (reading, official cleaning, label rendering), CULane ``.lines.txt`` and list
files (with the official ``laneseg_label_w16`` generator), ApolloScape class table, label PNGs and
list files, and the list-parsing machinery they share. numpy, scipy, OpenCV, Pillow and absl
only: the tf.data readers, the synthetic generators and the metrics all import these modules.
"""
