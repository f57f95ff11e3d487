import rxnsq.compat as nsq


def task1(message):
    print("task1", message)
    return True


def task2(message):
    print("task2", message)
    return True


all_tasks = {"task1": task1, "task2": task2}
r = nsq.LegacyReader(
    all_tasks,
    lookupd_http_addresses=["http://127.0.0.1:4161"],
    topic="nsq_reader",
    channel="asdf",
    lookupd_poll_interval=15,
)
nsq.run()
