// The partner's room page: the check, the waiting room, the call.

import { RoomPage } from './session.js';

new RoomPage().start();
