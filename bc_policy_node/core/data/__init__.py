"""Demonstration data: episode bags (write `bagio`, read/recover `bagread`, any rosbag2 bag via
`rosbag_reader`, message types `rostypes`), bags -> datasets (`dataset_builder`, frame alignment
`alignment`, long-bag segmentation `segment`), the dataset format (`episodes`), dataset tools and
LeRobot export/import."""
