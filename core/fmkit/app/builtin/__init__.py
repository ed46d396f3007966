"""The built-in plugin: the path/coupling/source/solver registrations (``plugin``), the toy 2-D
modality (``toy``), the MLP velocity model (``mlp``), the W2 metric (``metrics``) and the scatter writer."""
