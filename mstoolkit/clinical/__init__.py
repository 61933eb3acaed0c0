"""A radiology department's chain: DICOM series in (:mod:`~mstoolkit.clinical.dicom_series`), which
series is which (:mod:`~mstoolkit.clinical.sequences`), the structured report
(:mod:`~mstoolkit.clinical.report`), DICOM SEG and SR out (:mod:`~mstoolkit.clinical.dicom_out`), the
PACS (:mod:`~mstoolkit.clinical.pacs`), teaching studies (:mod:`~mstoolkit.clinical.scanner_export`)
and the pipeline that joins them (:mod:`~mstoolkit.clinical.study`)."""
