"""mstoolkit: learn and run automated MS lesion segmentation in brain MRI."""

__version__ = "0.1.0"
__all__ = ["__version__"]
