"""Wire contracts shared by every part of edgeloop: the artifact manifest, the fleet control
plane and the Open Inference Protocol. Generated stubs live beside their .proto files."""
