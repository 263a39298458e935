/* lmailer_smtp.c - Lua binding of the SMTP engine and transport
 * (mailer.core connection objects). */
#include "lmailer.h"

/* Register the connection API into the module table (none yet). */
void mlr_open_smtp(lua_State *L) { (void)L; }
