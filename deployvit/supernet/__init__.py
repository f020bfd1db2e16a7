"""Weight-sharing ViT supernets (AutoFormer entanglement, ViTAS cyclic sharing and identity shifting,
ViT-ResNAS multi-stage)."""

from deployvit.supernet.supernet import Supernet

__all__ = ["Supernet"]
