import functools
import tornado.httpserver
import tornado.ioloop
import tornado.options
import tornado.web
from rxnsq.compat import Writer, Error
from tornado.options import define, options

class MainHandler(tornado.web.RequestHandler):
    @property
    def nsq(self):
        return self.application.nsq

    def get(self):
        topic = 'log'
        msg = b'Hello world'
        msg_cn = u'Hello 世界'.encode('utf-8')

        self.nsq.pub(topic, msg)
        self.nsq.mpub(topic, [msg, msg_cn])
        self.nsq.dpub(topic, 60000, msg)

        # customize callback
        callback = functools.partial(self.finish_pub, topic=topic, msg=msg)
        self.nsq.pub(topic, msg, callback=callback)

        self.write(msg)

    def finish_pub(self, conn, data, topic, msg):
        if isinstance(data, Error):
            # try to re-pub message again if pub failed
            # (missing functionality: delay retry, limit attempts)
            self.nsq.pub(topic, msg)

class Application(tornado.web.Application):
    def __init__(self, handlers, **settings):
        self.nsq = Writer(['127.0.0.1:4150'])
        super(Application, self).__init__(handlers, **settings)

# --- not in pynsq's documentation: what makes the example a program -------------------------
if __name__ == '__main__':
    tornado.options.parse_command_line()
    application = Application([(r'/', MainHandler)])
    application.listen(8888, address='127.0.0.1')
    tornado.ioloop.IOLoop.current().start()
