"""DAgger without ROS: gates (`gates`), the arbiter that decides who acts and what is labelled
(`arbiter`), frame pairing with deadlines and absent parties (`frames`), the DAgger node's
parameters and variants (`params`)."""
