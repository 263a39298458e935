-- mailer.resty: OpenResty helpers. The SMTP driver is mailer.driver, one
-- for every socket; inside nginx, mailer.connect picks cosockets by itself
-- (socket = "nginx"). This module remains for code that asks whether
-- cosockets can be used here.
local driver = require "mailer.driver"

return {
  available = driver.available,
}
