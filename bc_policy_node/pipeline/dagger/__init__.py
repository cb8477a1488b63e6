"""DAgger rounds: one round loop (`loop.run_rounds`) over a `loop.Collector`, in process
(`inprocess.InProcessCollector`, `inprocess.run_dagger`) or through the ROS graph
(`ros.RosCollector`, `ros.run_dagger_ros`, `bc-policy dagger`); settings in
`config.DaggerConfig`, the round folders and records in `store`, retraining in `training`.

Nothing is imported here: `ros` needs rclpy and `training` imports torch when it trains.
"""
