"""On-disk formats: readers (and validators) of SA-1B, COCO RLE, images, SA-V, DAVIS-layout PNGs, COCO json, mask
folders."""
