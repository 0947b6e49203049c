"""tf.train.Example messages generated from the .proto files here (see regenerate.sh)."""
