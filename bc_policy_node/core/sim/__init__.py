"""The simulated robot and its tasks: MuJoCo arm (`sim`), tasks and goals (`tasks`), scripted
experts (`experts`), the environment the evaluator and the bridge step (`env`), seeded pushes
(`disturbance`) and the bridge's parameters (`bridge_params`)."""
