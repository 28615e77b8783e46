// Starts the camera and microphone while the rest of the page is still loading. An async
// module with one small import runs as soon as it arrives; the page's own modules are ready
// to ask only after every one of them has loaded, a few hundred ms later. The page's first
// LocalMedia.open() takes what this started.

import { openEarly } from './devices.js';

// A browser that cannot make calls is told so by the page; its camera stays off.
if ('RTCPeerConnection' in globalThis) openEarly();
