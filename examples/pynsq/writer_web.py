import tornado.httpserver
import tornado.ioloop
import tornado.options
import tornado.web

import rxnsq.compat as nsq


class MainHandler(tornado.web.RequestHandler):
    @property
    def nsq(self):
        return self.application.nsq

    def get(self):
        topic = "log"
        msg = "Hello world"
        msg_cn = "Hello 世界"

        self.nsq.pub(topic, msg)  # pub
        self.nsq.mpub(topic, [msg, msg_cn])  # mpub
        self.nsq.dpub(topic, 60, msg)  # dpub

        self.write(msg)


class Application(tornado.web.Application):
    def __init__(self, handlers, **settings):
        self.nsq = nsq.Writer(["127.0.0.1:4150"])
        super().__init__(handlers, **settings)


if __name__ == "__main__":
    tornado.options.parse_command_line()
    application = Application([(r"/", MainHandler)])
    application.listen(8888, address="127.0.0.1")
    tornado.ioloop.IOLoop.current().start()
