"""Datasets: importers (folder, zip, manifests, COCO, video), safe extraction, health report, splits, exports."""
