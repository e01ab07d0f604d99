"""A web demo of face verification with a model the pipeline trained (`bash scripts/demo`) or a pretrained reference
model (`bash scripts/demo --reference dlib_resnet --root data/profiles/lfw`); see docs/demo.md."""
