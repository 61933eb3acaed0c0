"""The clinic's formats: DICOM series in (:mod:`mstoolkit.clinical.dicom_series`)."""
